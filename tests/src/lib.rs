//! Support for the end-to-end tests: building bundles once per test run, sandboxes laid out as
//! the CodeDeploy agent lays out an instance, and running real binaries in them.
