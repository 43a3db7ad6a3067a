from interlock.services.router.main import main

main()
