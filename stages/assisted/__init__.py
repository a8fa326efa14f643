"""Stage 1, assisted-manual: the prompt simulation shared by training and the scripted
annotators, the annotator policy, and the decoder exported as ONNX for the annotators'
browsers (with its Python runner)."""
