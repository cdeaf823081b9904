from target_service.server import main

raise SystemExit(main())
