"""TODO(issue 13): removed once the tests import the modules below. The app's shared state now lives
in one module per concern: _navigation, _resources, _selection, _session, _sidebar, _warmup."""

from pages._navigation import ensure_navigation  # noqa: F401
from pages._resources import ensure_loaded  # noqa: F401
from pages._session import job_manager  # noqa: F401
