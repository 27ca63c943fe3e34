"""The commands behind `cropclf <command>` and `python scripts/<command>.py`: each module's ``main(argv)``
parses its flags and calls the library. Nothing is imported here (predict must start without Keras)."""

COMMANDS = {"train": "train", "evaluate": "evaluate", "export": "export", "predict": "predict",
            "inspect": "inspect_data", "review": "review", "benchmark": "benchmark"}
