"""Selection scopes for DIM: the encoder's and the decoder's channels ranked in separate pools
(each drops its own fraction), as the paper thresholds them. Pass to ``compiler.compile``:

>>> PAPER_SCOPES[0]
('encoder', ('down*',), None)
"""
PAPER_SCOPES = (("encoder", ("down*",), None), ("decoder", ("up*",), None))
