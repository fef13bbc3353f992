"""Presentation: a self-contained HTML report (test points, their most helpful and harmful training
points, the self-score ranking, retraining validation, settings), terminal tables and JSON/CSV files.

    from whybox.study import default_study
    from whybox import report
    study = default_study("digits")
    report.write_report("report.html", report.build_report(study, n_test=8, validate=10))

Everything in the page (images, figures, data) is embedded as base64; it makes no network request.
"""

from importlib import import_module

_HOME = {"ReportData": "build", "TestView": "build", "TrainView": "build", "build_report": "build",
         "render_html": "render", "write_report": "render",
         "explanation_dict": "writers", "print_explanation": "writers", "write_outputs": "writers"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Import each part on first use: the terminal writers do not pay for the HTML report's imports."""
    if name not in _HOME:
        raise AttributeError(f"module 'whybox.report' has no attribute {name!r}")
    return getattr(import_module(f"whybox.report.{_HOME[name]}"), name)
