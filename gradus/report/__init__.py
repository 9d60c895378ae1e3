"""``gradus report``: a run's history (:mod:`gradus.report.history`, pure Python), its pictures
(:mod:`gradus.report.plots`, matplotlib) and one self-contained HTML page (:mod:`gradus.report.page`)."""
