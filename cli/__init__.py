"""cassava: a cassava leaf-disease classifier from notebook to production, cloud (TF + MLServer) and edge (TFLite)."""

__version__ = "0.1.0"
