"""Sites guarded by wr: nginx (``nginx/wr.conf``) and two Python apps."""
