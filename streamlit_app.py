import streamlit as st

st.set_page_config(page_title="Fashion-MNIST Studio", page_icon="👕", layout="wide")
st.title("Fashion-MNIST Studio")
st.write("The web app is being built; use `python -m fmnist --help` meanwhile.")
