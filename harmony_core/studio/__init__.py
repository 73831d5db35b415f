"""The studio's logic behind the Gradio widgets: plain data in, plain data out, no model code."""
