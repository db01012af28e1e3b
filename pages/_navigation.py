"""The one place the app touches a Streamlit internal: the deep-link guard.

Streamlit 1.67 runs a fresh server's very first script run in its legacy pages-directory mode when
`pages/` sits beside the entry point (the fixed layout of this project) and that run opens a deep
link such as /train: the page runs alone, without streamlit_app.py's st.navigation, sidebar and page
config. Calling st.navigation switches the legacy mode off for all sessions (documented), but only
from the next run on. There is no public switch for the run already under way, so the guard reads
and clears `PagesManager.uses_pages_directory` and reruns once per server.

It fails soft: if a Streamlit release renames or drops the attribute, the guard does nothing and
the only cost is the old symptom (one bare page on a fresh server's first deep link).
tests/test_structure.py pins that the pinned Streamlit still has the attribute.
"""

from __future__ import annotations

import streamlit as st


def legacy_pages_mode() -> bool:
    """True while Streamlit runs pages/*.py in its legacy pages-directory mode (False if unknown)."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return False
    return bool(getattr(PagesManager, "uses_pages_directory", False))


def leave_legacy_pages_mode() -> bool:
    """Switch the legacy mode off for this server (no rerun); False when there was nothing to do."""
    if not legacy_pages_mode():
        return False
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
    return True


def ensure_navigation() -> None:
    """Make sure this run goes through streamlit_app.py's st.navigation (see the module doc)."""
    if leave_legacy_pages_mode():
        st.rerun()
