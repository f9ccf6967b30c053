"""The application: the `faithforge` CLI, the demo runner and its report, the Prefect settings and the UI report.

The only folder of this package that may import Prefect at module level."""
