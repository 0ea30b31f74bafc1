"""Pipeline stages: each module holds the ``run_<stage>(params)`` functions behind ``dissect
<stage>``; stages talk to each other only through files under ``params.work`` and
``params.results``."""
