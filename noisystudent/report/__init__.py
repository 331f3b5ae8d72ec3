"""The run report: RUN/report/report.html with tables and figures.

``write_report(run)`` reads the run folder (any stage may be unfinished) and
writes the page; ``summary_table`` and ``headline`` are reused by the CLI.
"""

from noisystudent.report.build import write_report
from noisystudent.report.tables import fold_table, headline, summary_table

__all__ = ["write_report", "summary_table", "headline", "fold_table"]
