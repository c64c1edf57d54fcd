"""Pure IR -> IR passes and IR analyses."""
