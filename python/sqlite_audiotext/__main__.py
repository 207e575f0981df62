"""`python -m sqlite_audiotext`: where the extension, its runtime and the default model are, for
the sqlite3 shell (the model is assembled first if this is its first use)."""

import sqlite_audiotext
from sqlite_audiotext.models import DEFAULT_MODEL_ENV_VAR

model = sqlite_audiotext.default_model_path()
print(f"extension:    {sqlite_audiotext.loadable_path()}")
print(f"onnxruntime:  {sqlite_audiotext.onnxruntime_path()}")
print(f"model:        {model}")
print()
print("In the sqlite3 shell:")
print(f"  AUDIOTEXT_ORT_DYLIB={sqlite_audiotext.onnxruntime_path()} {DEFAULT_MODEL_ENV_VAR}={model} sqlite3")
print(f"  .load {sqlite_audiotext.loadable_path()}")
