from twisted.application.service import ServiceMaker

dht = ServiceMaker("txdht", "txdht.tap", "Run a txdht Kademlia DHT node.", "dht")
