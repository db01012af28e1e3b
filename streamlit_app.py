"""Fashion-MNIST Studio: `streamlit run streamlit_app.py`.

Routes over pages/ with st.navigation and draws the shared sidebar (current run and backend).
Pages are thin: they call `fmnist` and render; TensorFlow and OpenVINO load only when needed.
"""

import streamlit as st

from pages import _navigation, _sidebar, _warmup  # no Streamlit command runs at import

_navigation.ensure_navigation()
st.set_page_config(page_title="Fashion-MNIST Studio", page_icon="👕", layout="wide",
                   initial_sidebar_state="expanded")


PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/grid_view:", url_path="data"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/tune:", url_path="sweep"),
    st.Page("pages/results.py", title="Results", icon=":material/insights:", url_path="results"),
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:", url_path="classify"),
    st.Page("pages/look_inside.py", title="Look inside", icon=":material/layers:", url_path="look-inside"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
]

page = st.navigation(PAGES)
_sidebar.sidebar()
page.run()
_warmup.warm_up()  # once per server, in the background: the classification model
