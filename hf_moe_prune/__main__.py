import sys

from hf_moe_prune.cli import main

sys.exit(main())
