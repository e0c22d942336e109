"""Reports: seed statistics per group (tables, JSON, Markdown), comparisons, reference
studies, plots, and W&B summaries."""

from .._exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "report_main": "report",
        "summarize": "stats",
        "compare": "compare",
    },
)
