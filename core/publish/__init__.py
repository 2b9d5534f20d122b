"""Sharing a trained model: its model card (:mod:`fw.publish.card`), a standalone export that a server loads
without fw (:mod:`fw.publish.export`) and the upload to the Hugging Face Hub (:mod:`fw.publish.upload`)."""
