"""People label preference queries in a browser: ``vla-gym label --queries DIR --db FILE``.

The page shows a query's two clips side by side under its instruction; the labeller answers
left / right / equal / skip (buttons or keys) and can undo. Labels go to a ``LabelStore``.

``server`` holds ``serve_labelling`` and ``make_labelling_server``; ``cli`` the typer command.
Nothing is imported here, so registering the command keeps ``vla-gym --help`` fast.
"""
