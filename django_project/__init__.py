"""The Django reference project: the same routes as the Flask app, as Django views."""
