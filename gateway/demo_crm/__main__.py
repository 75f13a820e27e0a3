from gateway.demo_crm.app import main

main()
