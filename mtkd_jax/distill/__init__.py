"""Knowledge distillation: frozen teachers, distillation terms, DML peers.

See `terms.py` for the loss terms and `teacher.py` for restoring teachers.
"""
