def pytest_configure(config):
    config.addinivalue_line("markers", "slowest_group: the e2e group to hand to an xdist worker first")
    config.addinivalue_line("markers", "generations(*labels): run a matrix test on these generations only")
