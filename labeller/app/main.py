"""Latent Labeller's Streamlit entry point, started by ``labeller serve PATH`` (this machine only). By hand:

    streamlit run labeller/app/main.py --server.address 127.0.0.1 -- --project PATH     (or LABELLER_PROJECT=PATH)

Without ``--server.address`` (and outside the repository, whose .streamlit/config.toml sets it), Streamlit listens
on every interface and the app shows only an error unless a login is configured.

The page files live in ``labeller/app/views`` (a folder named ``pages/`` would switch Streamlit to its
legacy multipage mode). This script sets the page up, draws the sidebar (who is labelling, image
safety, exposure) and runs the selected page.
"""

from __future__ import annotations

from pathlib import Path

# Imported here, before any page runs: plotly imports pandas lazily, and two sessions' script threads doing
# that at once saw a partially initialised module (AttributeError: module 'pandas' has no attribute
# 'Series' on the Explore page, seen under load).
import pandas  # noqa: F401
import plotly.graph_objects  # noqa: F401
import streamlit as st
from streamlit.navigation.page import StreamlitPage

from labeller.app import state
from labeller.app.components import identity_picker, wellbeing_panel
from labeller.app.text import md_text
from labeller.serving import allowed_hosts, host_allowed, is_local_address

VIEWS = Path(__file__).parent / "views"
# A local file: a ":material/...:" page icon makes the browser fetch the favicon from fonts.gstatic.com.
FAVICON = Path(__file__).parent / "assets" / "favicon.png"

# Hidden images: with blur on, pages send veiled renditions made on the server (a "hide-veiled" container,
# nothing to filter); a CSS filter hides what goes in full: greyscale, and a tile revealed by a hold.
STYLE = """
<style>
[class*="st-key-hide-blurred"] img { filter: blur(var(--ll-blur, 22px)); }
[class*="st-key-hide-grey"] img { filter: grayscale(1) contrast(0.9); }
[class*="st-key-tile-"] img { border-radius: 6px; }
[class*="label-image"] img { max-height: 62vh; object-fit: contain; }
.block-container { padding-top: 4.2rem; }  /* clear of the top bar (3.75rem) */
[class*="st-key-pick-"]:focus-within { outline: 2px solid #0072B2; outline-offset: 2px; border-radius: 4px; }
</style>
"""


# Pages that show images: closed once an annotator reaches the project's daily exposure limit.
IMAGE_PAGES = ("label", "grid", "review", "explore", "")


def hiding_style(hiding: state.Hiding) -> str:
    """This annotator's blur strength, and, with reveal on hold, a held mouse button shows a hidden image."""
    rules = [f":root {{ --ll-blur: {int(hiding.blur_px)}px; }}"]
    if hiding.reveal_on_hold:
        rules.append('[class*="st-key-hide-"]:active img { filter: none !important; }')
        rules.append("[data-ll-held] img { filter: none !important; }")  # marked by the hold layer (reveal/)
    return "<style>" + "\n".join(rules) + "</style>"


class _DefaultPageWithPath(st.Page):
    """The default page that also answers at its own URL: Streamlit serves a default page only at the root
    and answers "Page not found" for ``/label``, which is a URL people bookmark and share."""

    @property
    def url_path(self) -> str:
        return self._url_path


def build_navigation() -> StreamlitPage:
    pages = {
        "Annotate": [
            _DefaultPageWithPath(
                VIEWS / "label.py", title="Label", icon=":material/label:", url_path="label", default=True
            ),
            st.Page(VIEWS / "grid.py", title="Grid", icon=":material/grid_view:", url_path="grid"),
            st.Page(VIEWS / "review.py", title="Review", icon=":material/fact_check:", url_path="review"),
        ],
        "Model": [
            st.Page(VIEWS / "train.py", title="Train", icon=":material/model_training:", url_path="train"),
            st.Page(VIEWS / "explore.py", title="Explore", icon=":material/scatter_plot:", url_path="explore"),
        ],
        "Project": [
            st.Page(VIEWS / "data.py", title="Data", icon=":material/database:", url_path="data"),
        ],
    }
    return st.navigation(pages)


def refuse_open_server() -> None:
    """Stop every page of a server that listens beyond this machine without a login: ``streamlit run`` by hand
    with ``--server.address 0.0.0.0``, or with no address at all outside the repository (Streamlit then listens
    on every interface); ``labeller serve`` refuses to start that way."""
    if not is_local_address(st.get_option("server.address")) and not state.login_configured():
        st.error(
            "This server listens beyond this machine but has no login, so anyone could label as anyone. "
            "Start it with `labeller serve PROJECT` (this machine only), or `streamlit run` with "
            "`--server.address 127.0.0.1`, or configure Streamlit's login ([auth] in .streamlit/secrets.toml)."
        )
        st.stop()


def refuse_foreign_host() -> None:
    """Stop every page opened under a host name the server was not configured for: a foreign name that resolves
    to 127.0.0.1 (DNS rebinding) would otherwise let another site's page drive the app."""
    host = state.request_host()
    allowed = allowed_hosts(
        st.get_option("server.address"), state.login_redirect_uri(), st.get_option("server.allowedHosts") or ()
    )
    if not host_allowed(host, allowed):
        st.error(
            "This page was opened under a host name this server does not answer to, so nothing is shown (another "
            "site may be trying to reach it). Open it as http://localhost:PORT, or add the name to "
            "`server.allowedHosts` if it is yours."
        )
        st.stop()


def main() -> None:
    st.set_page_config(page_title="Latent Labeller", page_icon=str(FAVICON), layout="wide")
    st.html(STYLE)
    refuse_foreign_host()
    refuse_open_server()
    project = state.current_project()
    # The project's image-safety defaults, before any page draws an image.
    st.session_state.setdefault("blur", project.settings.labelling.blur_images)
    st.session_state.setdefault("greyscale", project.settings.labelling.greyscale_images)
    st.session_state.setdefault("blur_px", state.DEFAULT_BLUR_PX)
    st.session_state.setdefault("reveal_on_hold", True)
    navigation = build_navigation()
    with st.sidebar:
        st.markdown(f"**{md_text(project.settings.name)}**")
        identity_picker(project)
        wellbeing = st.container()
    state.load_wellbeing(project)
    st.html(hiding_style(state.hiding(project)))
    if navigation.url_path != "label" and (label_session := st.session_state.get("label_session")) is not None:
        # Away from the Label page: its look-ahead images go back to the pool for the other annotators.
        label_session.release_window(project.engine)
    try:
        if navigation.url_path in IMAGE_PAGES and state.over_daily_limit(project):
            st.title("Enough for today")
            st.info(
                f"You have seen {state.exposures_today()} images today, this project's daily limit "
                f"({project.settings.labelling.daily_exposure_limit}). Images come back tomorrow (UTC)."
            )
            st.stop()
        navigation.run()
    finally:
        # Drawn after the page so that the exposure count includes the image it just showed.
        with wellbeing:
            wellbeing_panel(project)


main()
