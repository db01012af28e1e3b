"""Fashion-MNIST Studio: train, inspect and serve a Fashion-MNIST CNN (Keras and OpenVINO).

Importing the package is cheap: TensorFlow, OpenVINO and scikit-learn load only inside the
functions that need them, so the CLI's --help and the web app start fast.
"""

__version__ = "0.1.0"
