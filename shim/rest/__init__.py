"""The REST front: TF Serving's REST API (and KServe v1) and the Open Inference Protocol's, under gunicorn behind nginx.

`app.create_app(settings)` builds it; `tf_serving` and `v2` are its two blueprints, `errors` every failure's
HTTP answer. Each route parses its request, calls one verb of the service, and encodes the answer.
"""
