"""Stage 1, assisted-manual: the prompt simulation shared by training and the scripted
annotators, the annotator policy, and the decoder exported for the annotators' browsers
(ONNX, and its runner)."""
