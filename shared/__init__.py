"""The framework-agnostic core that the Flask app and the Django project both mount."""
