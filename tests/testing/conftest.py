"""pytester (enabled with -p pytester in pyproject) runs the plugin as a user would."""
