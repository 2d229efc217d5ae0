"""The six services. They never import each other: they share only contracts and libs."""
