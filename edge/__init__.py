"""Edge tier: the TFLite copy of the model behind MLServer (V2 REST + gRPC) on a Raspberry Pi, with no TensorFlow.

Nothing here imports TensorFlow: the interpreter is ai-edge-litert (or tflite-runtime on 32-bit ARM). Only
`cassava convert` (edge/convert/), which runs on a workstation, loads TensorFlow, and only inside its `run`.
"""
