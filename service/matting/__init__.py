"""Alpha matting as rembg does it, solved only on the trimap's unknown band: the cutout and
warm-up (``cutout``), the band's linear system (``system``), its exact solve (``direct``), the
choice of solve and the iterative one (``solver``), the foreground colours (``foreground``), and
the helper threads they share (``threads``)."""
