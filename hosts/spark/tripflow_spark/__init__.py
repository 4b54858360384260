"""tripflow on Apache Spark: the KPIs of an archive of trip events, decided by the same core
component as the replay and the AWS pipeline, computed on any Spark cluster (AWS Glue, EMR,
or local mode).

The package is a thin host: it lists and splits the inputs, moves bytes between Spark stages and
runs the ``tripflow`` binary on each piece (``tripflow partition parse|resolve|sweep|finish``).
Every decision about an event, a trip or a KPI is the component's.
"""

__version__ = "0.1.0"
