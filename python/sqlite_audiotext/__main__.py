"""`python -m sqlite_audiotext`: where the extension and its runtime are, for the sqlite3 shell."""

import sqlite_audiotext

print(f"extension:    {sqlite_audiotext.loadable_path()}")
print(f"onnxruntime:  {sqlite_audiotext.onnxruntime_path()}")
print(f"model:        {sqlite_audiotext.default_model_path()}")
print()
print("In the sqlite3 shell:")
print(f"  AUDIOTEXT_ORT_DYLIB={sqlite_audiotext.onnxruntime_path()} sqlite3")
print(f"  .load {sqlite_audiotext.loadable_path()}")
