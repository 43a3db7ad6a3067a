from interlock.services.traceingest.main import main

main()
