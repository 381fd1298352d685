"""The sans-I/O core of txdht: pure logic, no sockets, no reactor, no clock reads."""
