"""Issue 11, activation cache faults: two extractions at once on a new store, and damaged chunks
(truncated, zeroed, bit-flipped, swapped, deleted) that `verify_store` / ``dissect verify`` must
name (store, layer, images) and that a rerun of the extraction must repair to the arrays of a
fresh run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from _helpers_cache import BATCH, LAYERS, N_IMAGES, TinyImages, count_forwards, tiny_backbone

from dissect.cache import (
    extract_activations,
    extract_batch,
    lock_path,
    open_activations,
    open_gradients,
    prepare_cache,
    store_metadata,
    verify_store,
)
from dissect.cli import main as cli_main
from dissect.errors import DataError

TESTS = Path(__file__).resolve().parent
KW = dict(batch_size=BATCH, dtype="float32", gradients="top1")
ARRAYS = [f"{p}/{layer}/{v}" for p, v in (("act", "activation"), ("grad", "gradient"))
          for layer in LAYERS]


def _arrays(store: Path) -> dict[str, np.ndarray]:
    """Every stored array read with plain zarr (no dissect code)."""
    return {a: zarr.open_array(store=str(store), path=a, mode="r")[:] for a in ARRAYS}


def _images(batch: int) -> list[str]:
    return TinyImages().ids[batch * BATCH:(batch + 1) * BATCH]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    extract_activations(TinyImages(), tiny_backbone(), LAYERS, store, progress=False, **KW)
    return store


# --------------------------------------------------------------------------------------------
# Two writers at once
# --------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from _helpers_cache import LAYERS, TinyImages, tiny_backbone
    from dissect.cache import extract_activations
    bb = tiny_backbone()
    # each forward takes a while, so that the two runs overlap whoever starts first
    bb.model.features[0].register_forward_hook(lambda *_: time.sleep(0.4))
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    extract_activations(TinyImages(), bb, LAYERS, sys.argv[1], batch_size={batch},
                        dtype="float32", gradients="top1", progress=False)
    print("finished")
""")


def test_two_extractions_at_once_one_fails_clearly_the_other_completes(tmp_path, reference):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(TESTS), batch=BATCH))
    store, go = tmp_path / "new.zarr", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(store), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    time.sleep(0.5)
    go.touch()  # both start extracting at the same moment
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1]
    assert "DataError" in err and str(store) in err, err[-2000:]
    assert f"another process (pid {procs[winner].pid})" in err, err[-2000:]
    assert "finished" in outs[winner][0]
    # the store is complete, intact and equal to an extraction that ran alone
    assert verify_store(store) == []
    assert store_metadata(store)["complete"]
    got, want = _arrays(store), _arrays(reference)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert lock_path(store).is_file()  # a sibling of the store, not inside it


def test_the_writer_lock_is_held_until_the_plan_is_closed(tmp_path):
    store = tmp_path / "held.zarr"
    bb, ds = tiny_backbone(), TinyImages(4)
    plan = prepare_cache(ds, bb, ["c1"], store, batch_size=2)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from _helpers_cache import TinyImages, tiny_backbone
        from dissect.cache import prepare_cache, verify_store
        from dissect.errors import DataError
        for f in (lambda: prepare_cache(TinyImages(4), tiny_backbone(), ['c1'], {str(store)!r},
                                        batch_size=2),
                  lambda: verify_store({str(store)!r})):
            try:
                f()
            except DataError as e:
                print('REFUSED', e)
    """)

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120).stdout

    out = other_process()
    assert out.count("REFUSED") == 2 and f"(pid {os.getpid()})" in out and str(store) in out
    # the holder itself may go on (Dask threads of the same process share the hold)
    assert extract_batch(plan, 0, ds, bb)
    assert prepare_cache(ds, bb, ["c1"], store, batch_size=2).pending() == [1]
    plan.close()
    assert extract_activations(ds, bb, ["c1"], store, batch_size=2, progress=False) == store
    assert verify_store(store) == []


# --------------------------------------------------------------------------------------------
# Damaged chunks: verify names them, reading refuses them, a rerun repairs them
# --------------------------------------------------------------------------------------------


def _chunk(store: Path, array: str, batch: int) -> Path:
    return store / array / "c" / str(batch) / "0" / "0" / "0"


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))


def _damage(store: Path, kind: str) -> tuple[str, set[int]]:
    """Damage ``store``; return the damaged array and batches."""
    array = "act/c2/activation"
    f = _chunk(store, array, 1)
    if kind == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "zero":
        f.write_bytes(bytes(f.stat().st_size))
    elif kind == "bitflip":
        _flip(f)
    elif kind == "swap":
        g = _chunk(store, array, 2)
        a, b = f.read_bytes(), g.read_bytes()
        f.write_bytes(b)
        g.write_bytes(a)
        return array, {1, 2}
    elif kind == "delete":
        f.unlink()
    elif kind == "delete-dir":  # a whole chunk directory of a gradient array
        array = "grad/c1/gradient"
        shutil.rmtree(store / array / "c" / "3")
        return array, {3}
    elif kind == "checksum-row":
        array = "checksums"
        _flip(store / "checksums" / "c" / "1" / "0")
    else:  # pragma: no cover
        raise ValueError(kind)
    return array, {1}


def _rerun_like_the_stage(store: Path) -> int:
    """What ``dissect extract`` does (prepare, pending, one Dask task per batch); returns the
    number of forward passes."""
    bb = tiny_backbone()
    calls = count_forwards(bb)
    ds = TinyImages()
    with prepare_cache(ds, bb, LAYERS, store, **KW) as plan:
        tasks = [dask.delayed(extract_batch)(plan, b, ds, bb, force=True)
                 for b in plan.pending()]
        dask.compute(*tasks, scheduler="threads", num_workers=2)
    return len(calls)


KINDS = ["truncate", "zero", "bitflip", "swap", "delete", "delete-dir", "checksum-row"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_chunk_is_named_refused_and_repaired(tmp_path, reference, kind, capsys, caplog):
    store = tmp_path / "damaged.zarr"
    shutil.copytree(reference, store)
    assert verify_store(store) == [] and cli_main(["verify", str(store)]) == 0
    array, batches = _damage(store, kind)
    layer = array.split("/")[1] if "/" in array else None

    problems = verify_store(store)
    assert {p.batch for p in problems} == batches, [str(p) for p in problems]
    for p in problems:
        assert set(p.image_ids) == set(_images(p.batch))
        assert p.kind == ("unreadable" if kind == "checksum-row" else
                          "missing" if kind.startswith("delete") else "damaged")
        if layer:
            assert p.layer == layer and array in str(p)
    capsys.readouterr()
    assert cli_main(["verify", str(store)]) == 1
    printed = capsys.readouterr().out
    assert str(store) in printed
    for b in batches:
        assert all(i in printed for i in _images(b)), printed
    if layer:
        assert f"layer {layer}" in printed

    # reading the damaged images fails with a message naming store, layer and images
    if layer:
        opener = open_gradients if array.startswith("grad") else open_activations
        with pytest.raises(DataError) as info:
            opener(store, layer).values  # noqa: B018
        msg = str(info.value)
        assert str(store) in msg and f"layer {layer}" in msg
        assert any(all(i in msg for i in _images(b)) for b in batches), msg
        # the intact images are still read (a selection that avoids the damaged batches)
        ok = [i for i in TinyImages().ids if i not in sum((_images(b) for b in batches), [])]
        np.testing.assert_array_equal(
            opener(store, layer, allow_partial=True).sel(image=ok).values,
            zarr.open_array(store=str(reference), path=array, mode="r")[:][
                [TinyImages().ids.index(i) for i in ok]])

    # a rerun recomputes exactly the damaged batches and repairs the store
    caplog.clear()
    assert _rerun_like_the_stage(store) == len(batches)
    assert all(i in caplog.text for b in batches for i in _images(b))
    assert verify_store(store) == [] and cli_main(["verify", str(store)]) == 0
    got, want = _arrays(store), _arrays(reference)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert _rerun_like_the_stage(store) == 0  # nothing left to do


def test_damaged_image_coordinates_are_found_and_rewritten(tmp_path, reference):
    store = tmp_path / "coords.zarr"
    shutil.copytree(reference, store)
    (store / "act" / "c1" / "image" / "c" / "0").write_bytes(b"\0" * 8)
    problems = verify_store(store)
    assert [p.kind for p in problems] == ["damaged"] and "act/c1/image" in str(problems[0])
    assert _rerun_like_the_stage(store) == 0  # no batch to recompute: the ids are rewritten
    assert verify_store(store) == []
    assert list(open_activations(store, "c1")["image"].values) == TinyImages().ids


def test_a_deleted_chunk_is_not_claimed_complete(tmp_path, reference):
    store = tmp_path / "gone.zarr"
    shutil.copytree(reference, store)
    _chunk(store, "act/c1/activation", 0).unlink()
    meta = store_metadata(store)
    assert not meta["complete"] and meta["n_done"] == meta["n_batches"] - 1 == N_IMAGES // BATCH
    with pytest.raises(DataError, match="layer c1.*images not on disk: img00, img01, img02"):
        open_activations(store, "c1")


def test_verify_on_something_else(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert cli_main(["verify", str(tmp_path / "x")]) == 2
    assert "not a dissect activation cache" in capsys.readouterr().err
