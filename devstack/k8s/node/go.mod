module rolegate.dev/devstack/node

go 1.25.0
