"""The two protocols' words for the service's values: TF Serving's (tf_serving, tf_tensors) and the Open
Inference Protocol's (v2_tensors, v2_model), rendered from one model schema (schema)."""
