"""The dashboard every manager serves at `/ui`: one page of its own HTML, CSS and JavaScript
(`static/`, no third-party code, no CDN), which reads the API with the token the user gives it, plus
reads of its own (`routes.py`): who the token is, the pods with their heartbeats, recently done jobs,
dead letters with their errors, the charts' recent series."""
