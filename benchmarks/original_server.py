"""The original fastai-serving method, rebuilt on fastai 2 for comparison (benchmark row 4).

One single-threaded web server process holding the Learner: each request's instances are
decoded and predicted as one batch; requests wait their turn. No batching across requests.
Run: python original_server.py EXPORT_PKL PORT
"""

from __future__ import annotations

import base64
import io
import sys

from flask import Flask, jsonify, request
from PIL import Image


def create_app(export_path: str) -> Flask:
    from fastai.vision.all import load_learner

    learn = load_learner(export_path)
    app = Flask(__name__)

    @app.post("/analyze:predict")
    def predict():
        instances = request.get_json(force=True)["instances"]
        images = [Image.open(io.BytesIO(base64.b64decode(i["image_bytes"]["b64"]))).convert("RGB") for i in instances]
        dl = learn.dls.test_dl(images, num_workers=0)
        with learn.no_bar():
            probabilities, _ = learn.get_preds(dl=dl)
        return jsonify({"predictions": probabilities.tolist()})

    return app


if __name__ == "__main__":
    create_app(sys.argv[1]).run(host="127.0.0.1", port=int(sys.argv[2]), threaded=False)
