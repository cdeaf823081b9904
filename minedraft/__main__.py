from minedraft.cli import main

raise SystemExit(main())
