"""The exported ranker as an MLflow pyfunc model, loaded from this file ("models from code":
MLflow copies it into the model and runs it on load). It imports neither psrq nor Spark,
and nothing is pickled: the ranker is the torch.export archive beside it (psrq.serving.artifact).

    import mlflow
    ranker = mlflow.pyfunc.load_model("<export folder>/mlflow_model")   # or runs:/<run id>/model
    probs = ranker.predict({"item_idx": ..., "hist_item_idx": ..., ...})  # numpy arrays by input name
"""
import json

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel


class ExportedRanker(PythonModel):
    def load_context(self, context):
        extra = {"psrq_export.json": ""}
        self.ranker = torch.export.load(context.artifacts["ranker"], extra_files=extra).module()
        self.inputs = json.loads(extra["psrq_export.json"])["inputs"]

    def predict(self, context, model_input, params=None):
        """model_input: each input by name as an array (list columns 2-D); probabilities out."""
        args = [torch.from_numpy(np.ascontiguousarray(np.asarray(model_input[c["name"]]).astype(c["dtype"])))
                for c in self.inputs]
        with torch.no_grad():
            return self.ranker(*args).double().numpy()


mlflow.models.set_model(ExportedRanker())
