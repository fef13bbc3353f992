"""A self-contained HTML report: test points, their most helpful and harmful training points,
self-influence ranking, retraining validation and the settings that produced it.

    from whybox.explain import default_study
    from whybox import report
    study = default_study("digits")
    report.write_report("report.html", report.build_report(study, n_test=8, validate=10))

Everything (images, figures, data) is embedded as base64; the page makes no network request.
"""

from whybox.report.build import ReportData, TestView, TrainView, build_report
from whybox.report.render import render_html, write_report

__all__ = ["ReportData", "TestView", "TrainView", "build_report", "render_html", "write_report"]
