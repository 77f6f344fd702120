"""What comes after a run: promotion to full evaluation, the JSON export, and the report with its evidence."""
