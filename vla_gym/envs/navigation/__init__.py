"""Language-directed navigation: a diff-drive base in procedurally generated rooms."""
