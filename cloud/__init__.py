"""Cloud tier: the full TensorFlow model behind MLServer (V2 REST + gRPC), packaged for Seldon Core."""
import os

# TensorFlow's C++ start-up chatter (CPU features, missing CUDA) buries the one line a user needs to read.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
