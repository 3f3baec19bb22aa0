import sys

from hf_moe_prune_cli import main

sys.exit(main())
