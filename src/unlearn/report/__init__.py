"""Run reports: report.html (self-contained) and report.md from the files a run folder holds."""
